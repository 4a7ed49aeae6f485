from rest_framework import viewsets

from engagement.api.filters import PostFilter
from engagement.api.serializers import PostSerializer, SourceSerializer
from engagement.models import Post, Source


class PostViewSet(viewsets.ReadOnlyModelViewSet):
    """Collected posts, newest first, with cursor paging."""

    queryset = Post.objects.alive().select_related("author")
    serializer_class = PostSerializer
    filterset_class = PostFilter


class SourceViewSet(viewsets.ReadOnlyModelViewSet):
    """The sources being collected, with their health and latest run."""

    queryset = Source.objects.with_last_run().prefetch_related("hashtags").order_by("id")
    serializer_class = SourceSerializer
    pagination_class = None  # a newsroom has tens of sources, not thousands
    filterset_fields = ["platform", "enabled"]
