// Dies mid-call: a body of "crash" ends the process (no answer), anything else is fine.
const fdk = require('@fnproject/fdk')

fdk.handle(function (input) {
  if (input === 'crash') {
    console.error('about to crash')
    process.exit(3)
  }
  console.error("an earlier call's output")
  return 'fine'
}, { inputMode: 'string' })
