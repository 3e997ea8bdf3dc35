// A handler that throws: the FDK answers 502.
const fdk = require('@fnproject/fdk')

fdk.handle(function (input) {
  throw new Error('custom_error')
})
