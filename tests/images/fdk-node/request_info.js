// What the handler sees of the HTTP request, plus a per-process call count.
const fdk = require('@fnproject/fdk')

let calls = 0

fdk.handle(function (input, ctx) {
  calls += 1
  const hctx = ctx.httpGateway
  return {
    method: hctx.method,
    url: hctx.requestURL,
    headers: hctx.headers,
    body: input,
    calls: calls,
    pid: process.pid
  }
}, { inputMode: 'string' })
