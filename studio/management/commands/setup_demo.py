"""Create one demo account per role (embedded / DEBUG mode only) and print the credentials."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from studio.roles import ROLES

DEMO_USERS = {
    "builder": ("builder", "builder-demo-pass"),
    "annotator": ("annotator", "annotator-demo-pass"),
    "moderator": ("moderator", "moderator-demo-pass"),
}


class Command(BaseCommand):
    help = "Create demo accounts for each role (only when DEBUG=1) and print their credentials."

    def add_arguments(self, parser):  # noqa: ANN001, ANN201
        parser.add_argument("--quiet", action="store_true", help="do not print the credentials")

    def handle(self, *args, **options):  # noqa: ANN002, ANN003, ANN201
        if not settings.DEBUG:
            raise CommandError("Demo accounts are only created in embedded/DEBUG mode (DEBUG=1). "
                               "In production create users with 'python manage.py createsuperuser'.")
        User = get_user_model()
        lines = []
        for role in ROLES:
            username, password = DEMO_USERS[role]
            group, _ = Group.objects.get_or_create(name=role)
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(password)
                user.save()
            user.groups.add(group)
            lines.append(f"  {role:<10} username: {username:<10} password: {password}"
                         + ("" if created else "  (existing account; password unchanged)"))
        if not options["quiet"]:
            self.stdout.write("Demo accounts (development only):\n" + "\n".join(lines))
