"""URLs of the example. The websocket endpoint /ws/ is not here: the WSGI application routes it."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from chatserver import views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="chat", permanent=False)),
    path("chat/", views.broadcast_chat, name="chat"),
    path("userchat/", views.user_chat, name="userchat"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
