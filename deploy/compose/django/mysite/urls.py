from django.contrib import admin
from django.http import HttpResponse
from django.urls import path


def index(request):
    # Shows what the edge passed on: https, the site's Host and the client's address.
    return HttpResponse(
        "scheme=%s host=%s client=%s\n"
        % (
            request.scheme,
            request.get_host(),
            request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")[0],
        ),
        content_type="text/plain",
    )


urlpatterns = [
    path("", index),
    path("admin/", admin.site.urls),
]
