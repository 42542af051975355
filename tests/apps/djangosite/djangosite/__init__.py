"""Minimal Django project for the ngx-wsgi integration tests (admin only)."""
