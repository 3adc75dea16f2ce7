"""URLs of the test project; server tests add their views here."""

from django.urls import path

from tests.project import hooks, views

urlpatterns: list = [
    path("ping", views.ping),
    path("overlap", hooks.overlap),
    path("publish", views.publish),
]
