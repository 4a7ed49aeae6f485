from rest_framework import serializers

from engagement.models import Author, Post, Source


class AuthorSerializer(serializers.ModelSerializer):
    class Meta:
        model = Author
        fields = ["id", "platform", "external_id", "handle", "display_name", "url"]


class PostSerializer(serializers.ModelSerializer):
    author = AuthorSerializer(read_only=True)

    class Meta:
        model = Post
        fields = [
            "id", "platform", "external_id", "uri", "url", "kind", "author", "created_at", "collected_at",
            "updated_at", "edited_at", "language", "html", "text", "hashtags", "reply_to_external_id",
            "reply_count", "repost_count", "like_count", "status",
        ]


class SourceSerializer(serializers.ModelSerializer):
    hashtags = serializers.SlugRelatedField(many=True, read_only=True, slug_field="name")
    health = serializers.CharField(read_only=True)
    lag_seconds = serializers.SerializerMethodField()
    last_run = serializers.SerializerMethodField()

    class Meta:
        model = Source
        fields = [
            "id", "platform", "name", "base_url", "hashtags", "enabled", "poll_interval", "health",
            "last_poll_at", "last_success_at", "lag_seconds", "consecutive_failures", "last_error",
            "last_error_kind", "last_error_at", "rate_limited_until", "paused_until", "health_detail", "last_run",
        ]

    def get_lag_seconds(self, source: Source) -> int | None:
        return int(source.lag.total_seconds()) if source.lag is not None else None

    def get_last_run(self, source: Source) -> dict | None:
        if source.last_run_outcome is None:
            return None
        return {"outcome": source.last_run_outcome, "fetched": source.last_run_fetched, "new": source.last_run_new}
