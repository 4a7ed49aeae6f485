from rest_framework import viewsets

from engagement.api.filters import PostFilter
from engagement.api.serializers import PostSerializer
from engagement.models import Post


class PostViewSet(viewsets.ReadOnlyModelViewSet):
    """Collected posts, newest first, with cursor paging."""

    queryset = Post.objects.alive().select_related("author")
    serializer_class = PostSerializer
    filterset_class = PostFilter
