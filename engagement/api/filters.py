import django_filters

from engagement.models import Platform, Post
from engagement.sources.base import normalise_tag


class PostFilter(django_filters.FilterSet):
    """Filters of the posts list; shared with the HTML views. Each is documented in README.md."""

    hashtag = django_filters.CharFilter(method="filter_hashtag", help_text="A tracked hashtag, with or without '#', any case.")
    platform = django_filters.ChoiceFilter(choices=Platform.choices)
    status = django_filters.ChoiceFilter(choices=Post.Status.choices, help_text="Moderation status.")
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte",
                                             help_text="Published at or after (ISO 8601).")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt",
                                             help_text="Published before (ISO 8601).")

    class Meta:
        model = Post
        fields = ["hashtag", "platform", "status", "since", "until"]

    def filter_hashtag(self, queryset, name, value):
        return queryset.filter(hashtags__contains=[normalise_tag(value)])
