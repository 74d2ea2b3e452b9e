"""URLs of the test site."""
from django.contrib import admin
from django.urls import path

from site_app import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("whoami", views.whoami),
    path("slow", views.slow),
    path("mixed", views.mixed),
    path("static-marker.js", views.static_marker),
    path("post", views.post),
    path("", views.index),
]
