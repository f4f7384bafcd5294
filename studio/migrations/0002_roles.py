"""Create the role groups: builder, annotator, moderator."""

from django.db import migrations

ROLES = ("builder", "annotator", "moderator")


def create_roles(apps, schema_editor):  # noqa: ANN001, ANN201
    Group = apps.get_model("auth", "Group")
    for name in ROLES:
        Group.objects.get_or_create(name=name)


class Migration(migrations.Migration):
    dependencies = [("studio", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
