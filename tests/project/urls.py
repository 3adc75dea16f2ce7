"""URLs of the test project; server tests add their views here."""

urlpatterns: list = []
