// Fn's hello world for the Node FDK (@fnproject/fdk on npm): JSON in, JSON out.
const fdk = require('@fnproject/fdk')

fdk.handle(function (input) {
  let name = 'World'
  if (input.name) {
    name = input.name
  }
  console.log('\nInside Node Hello World function')
  return { message: 'Hello ' + name }
})
