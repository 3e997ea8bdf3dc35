# Functions for the real Fn Python FDK (fdk on PyPI), written the way Fn's
# docs write them. The image runs `/python/bin/fdk /function/func.py HANDLER`;
# a Kiln spec picks the handler with `cmd = ["HANDLER"]`.
import io
import json
import logging
import os

from fdk import response

_calls = 0


def handler(ctx, data: io.BytesIO = None):
    """Fn's hello world: JSON in, JSON out."""
    name = "World"
    try:
        body = json.loads(data.getvalue())
        name = body.get("name")
    except (Exception, ValueError) as ex:
        logging.getLogger().info("error parsing json payload: " + str(ex))

    logging.getLogger().info("Inside Python Hello World function")
    return response.Response(
        ctx,
        response_data=json.dumps({"message": "Hello {0}".format(name)}),
        headers={"Content-Type": "application/json"},
    )


def created(ctx, data: io.BytesIO = None):
    """A status and a header of the handler's own choosing."""
    return response.Response(
        ctx, response_data="made", status_code=201, headers={"X-Custom": "1"}
    )


def request_info(ctx, data: io.BytesIO = None):
    """What the handler sees of the HTTP request, plus a per-process call count."""
    global _calls
    _calls += 1
    return response.Response(
        ctx,
        response_data=json.dumps(
            {
                "method": ctx.Method(),
                "url": ctx.RequestURL(),
                "headers": ctx.HTTPHeaders(),
                "body": data.getvalue().decode("utf-8", "replace"),
                "calls": _calls,
                "pid": os.getpid(),
            }
        ),
        headers={"Content-Type": "application/json"},
    )


def fail(ctx, data: io.BytesIO = None):
    raise Exception("custom_error")


def crash(ctx, data: io.BytesIO = None):
    """Dies mid-call: a body of "crash" ends the process (no answer), anything else is fine."""
    if data.getvalue() == b"crash":
        print("about to crash", flush=True)
        os._exit(3)
    print("an earlier call's output", flush=True)
    return "fine"
