from django.core.management.base import BaseCommand
from tqdm import tqdm

from engagement import sentiment
from engagement.management.commands.collect import parse_since
from engagement.models import Post


class Command(BaseCommand):
    help = ("Score posts again with the current sentiment backends (after a backend change), in batches, with "
            "progress. People's corrections are kept.")

    def add_arguments(self, parser):
        parser.add_argument("--since", help="only posts published since this ISO date or time")

    def handle(self, *args, since=None, **options):
        posts = Post.objects.alive()
        if since:
            posts = posts.filter(created_at__gte=parse_since(since))
        total = posts.count()
        with tqdm(total=total, unit=" posts", file=self.stderr._out, disable=None) as bar:
            done = sentiment.rescore(posts, on_batch=lambda n: bar.update(n - bar.n))
        self.stdout.write(f"rescored={done}")
