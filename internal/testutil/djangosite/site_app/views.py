"""Views that let edgeproxy's tests see what the backend received."""
import hashlib
import html
import time

from django.conf import settings
from django.http import HttpResponse, HttpResponseBadRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt


def index(request):
    """GET / -> 200 "ok INSTANCE"."""
    return HttpResponse("ok %s" % settings.INSTANCE, content_type="text/plain")


def whoami(request):
    """JSON description of the request as Django saw it."""
    meta = request.META
    xff = meta.get("HTTP_X_FORWARDED_FOR", "")
    first = xff.split(",")[0].strip() if xff else ""
    return JsonResponse(
        {
            "instance": settings.INSTANCE,
            "is_secure": request.is_secure(),
            "host": request.get_host(),
            "remote_addr": meta.get("REMOTE_ADDR", ""),
            "client": first or meta.get("REMOTE_ADDR", ""),
            "x_forwarded_for": xff,
            "x_forwarded_proto": meta.get("HTTP_X_FORWARDED_PROTO", ""),
            "x_forwarded_host": meta.get("HTTP_X_FORWARDED_HOST", ""),
            "path": request.get_full_path(),
            "method": request.method,
        }
    )


def slow(request):
    """GET /slow?ms=N sleeps N milliseconds (capped at 60 s), then 200 "slow done"."""
    try:
        ms = int(request.GET.get("ms", "1000"))
    except ValueError:
        return HttpResponseBadRequest("ms must be an integer\n")
    time.sleep(max(0, min(ms, 60000)) / 1000.0)
    return HttpResponse("slow done", content_type="text/plain")


def mixed(request):
    """An HTML page that loads a script over plain http (mixed content).

    Query: port (required, the http port), host (default app.test).
    """
    try:
        port = int(request.GET.get("port", "80"))
    except ValueError:
        return HttpResponseBadRequest("port must be an integer\n")
    host = html.escape(request.GET.get("host", "app.test"), quote=True)
    body = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>mixed</title></head>\n"
        "<body><h1>mixed content test (%s)</h1>\n"
        "<script src=\"http://%s:%d/static-marker.js\"></script>\n"
        "</body></html>\n" % (html.escape(settings.INSTANCE), host, port)
    )
    return HttpResponse(body, content_type="text/html; charset=utf-8")


def static_marker(request):
    """The script that /mixed loads; it marks the page when it runs."""
    js = (
        "document.body.setAttribute('data-marker','loaded'); "
        "document.body.insertAdjacentHTML('beforeend','<p id=\"marker\">MARKER-LOADED</p>');\n"
    )
    return HttpResponse(js, content_type="application/javascript")


@csrf_exempt
def post(request):
    """POST /post -> JSON with the length and SHA-256 of the body received.

    The body is read as a stream, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE does
    not cap it, and a chunked request body (no Content-Length) is counted too.
    """
    if request.method != "POST":
        resp = HttpResponse("POST only\n", status=405, content_type="text/plain")
        resp["Allow"] = "POST"
        return resp
    # Django reads a body without Content-Length as empty; gunicorn's
    # wsgi.input decodes a chunked body itself, so read that one directly.
    stream = request
    if not request.META.get("CONTENT_LENGTH") and "wsgi.input" in request.META:
        stream = request.META["wsgi.input"]
    digest = hashlib.sha256()
    length = 0
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        length += len(chunk)
        digest.update(chunk)
    return JsonResponse(
        {
            "instance": settings.INSTANCE,
            "method": request.method,
            "length": length,
            "sha256": digest.hexdigest(),
            "content_type": request.META.get("CONTENT_TYPE", ""),
            "content_length": request.META.get("CONTENT_LENGTH", ""),
            "transfer_encoding": request.META.get("HTTP_TRANSFER_ENCODING", ""),
        }
    )
