"""The Django project the test suite (and the servers it starts) run against."""
