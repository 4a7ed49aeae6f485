from django.core.management.base import BaseCommand
from tqdm import tqdm

from engagement import collect
from engagement.models import Platform, Post


class Command(BaseCommand):
    help = "Rebuild stored posts' fields from their raw payloads with the current parsers (after a parser fix)."

    def add_arguments(self, parser):
        parser.add_argument("--platform", choices=Platform.values)

    def handle(self, *args, platform=None, **options):
        total = (Post.objects.filter(platform=platform) if platform else Post.objects).count()
        with tqdm(total=total, unit=" posts", file=self.stderr._out, disable=None) as bar:
            def progress(checked, changed):
                bar.update(checked - bar.n)
                bar.set_postfix(changed=changed)

            checked, changed, failed = collect.renormalise(platform=platform, on_batch=progress)
        self.stdout.write(f"checked={checked} changed={changed} failed={failed}")
