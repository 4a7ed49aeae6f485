"""The Moderators (act) and Editors (read) groups with their permissions."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

# Permission codenames per group. Editors read; moderators read and change moderation state.
READ = [
    "view_post", "view_postrevision", "view_author", "view_article", "view_hashtag", "view_source",
    "view_collectionrun", "view_rejecteditem", "view_moderationevent", "view_moderationrule", "view_bulkjob",
]
GROUPS = {
    "Editors": READ,
    "Moderators": READ + [
        "moderate_post", "change_author", "add_moderationrule", "change_moderationrule",
        "delete_moderationrule", "add_bulkjob", "change_bulkjob",
    ],
}


def create_groups(apps, schema_editor):
    # Permissions are normally created after all migrations; make sure they exist now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(Permission.objects.filter(content_type__app_label="engagement", codename__in=codenames))


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("engagement", "0003_moderation"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
