from rest_framework import serializers

from engagement.models import Author, Post


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
