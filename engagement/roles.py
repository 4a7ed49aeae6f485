"""The two roles: Moderators act (change states, ban authors, edit rules, run and undo bulk jobs), Editors
read. Django groups, created by migration 0004 and kept in step after every `migrate` (post_migrate), so a
flushed test database or a deleted group gets them back."""

from __future__ import annotations

# Permission codenames of the engagement app per group.
READ = [
    "view_post", "view_postrevision", "view_author", "view_article", "view_hashtag", "view_source",
    "view_collectionrun", "view_rejecteditem", "view_moderationevent", "view_moderationrule", "view_bulkjob",
]
GROUPS = {
    "Editors": READ + ["correct_sentiment"],
    "Moderators": READ + [
        "correct_sentiment", "moderate_post", "change_author", "add_moderationrule", "change_moderationrule",
        "delete_moderationrule", "add_bulkjob", "change_bulkjob",
    ],
}


def ensure_roles(apps, using: str = "default") -> None:
    """Create the groups when missing and give them exactly their permissions (which must exist)."""
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GROUPS.items():
        group, _ = Group.objects.using(using).get_or_create(name=name)
        group.permissions.set(Permission.objects.using(using).filter(content_type__app_label="engagement",
                                                                     codename__in=codenames))


def on_post_migrate(sender, app_config=None, using="default", apps=None, **kwargs) -> None:
    from django.apps import apps as global_apps

    ensure_roles(global_apps, using=using)
