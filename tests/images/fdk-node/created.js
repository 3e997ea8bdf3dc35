// A status and a header of the handler's own choosing.
const fdk = require('@fnproject/fdk')

fdk.handle(function (input, ctx) {
  const hctx = ctx.httpGateway
  hctx.statusCode = 201
  hctx.setResponseHeader('X-Custom', '1')
  return 'made'
})
