from django.core.management.base import BaseCommand
from tqdm import tqdm

from engagement import rollups


class Command(BaseCommand):
    help = "Recount the hourly rollups behind the editors' figures from the posts (a week per statement)."

    def handle(self, *args, **options):
        with tqdm(unit=" hours", file=self.stderr._out, disable=None) as bar:
            hours = rollups.rebuild(on_progress=lambda n: bar.update(n - bar.n))
        self.stdout.write(f"hours={hours}")
