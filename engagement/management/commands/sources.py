from django.core.management.base import BaseCommand, CommandError

from engagement import collect
from engagement.models import Platform, Source
from engagement.sources.base import SourceError


class Command(BaseCommand):
    help = "Add, list and disable the sources that collection polls."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="register a source and print its id")
        add.add_argument("--platform", required=True, choices=Platform.values)
        add.add_argument("--url", required=True, help="the instance or site, e.g. https://mastodon.social")
        add.add_argument("--hashtag", required=True, action="append", help="repeat for several hashtags")
        add.add_argument("--interval", type=int, help="seconds between polls")
        add.add_argument("--name", default="")
        add.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help="a platform option (see README), e.g. --option channel=example; repeatable")
        sub.add_parser("list", help="every source with its health")
        disable = sub.add_parser("disable", help="stop polling a source")
        disable.add_argument("id", type=int)
        enable = sub.add_parser("enable", help="poll a disabled source again")
        enable.add_argument("id", type=int)

    def handle(self, *args, action, **options):
        getattr(self, f"handle_{action}")(**options)

    def handle_add(self, *, platform, url, hashtag, interval, name, option, **_):
        if interval is not None and interval < 10:
            raise CommandError("--interval must be at least 10 seconds")
        options = {}
        for pair in option:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise CommandError(f"--option takes KEY=VALUE, not {pair!r}")
            options[key.strip()] = value.strip()
        try:
            source = collect.register_source(platform=platform, url=url, hashtags=hashtag, interval=interval,
                                             name=name, options=options)
        except SourceError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(str(source.pk))

    def handle_list(self, **_):
        sources = Source.objects.with_last_run().prefetch_related("hashtags")
        if not sources:
            self.stdout.write("no sources; add one with: manage.py sources add --platform mastodon --url URL --hashtag TAG")
            return
        for s in sources:
            tags = " ".join(str(t) for t in s.hashtags.all())
            last_success = s.last_success_at.isoformat(timespec="seconds") if s.last_success_at else "never"
            lag = f"{int(s.lag.total_seconds())}s" if s.lag else "-"
            self.stdout.write(
                f"{s.pk}\t{s.platform}\t{s.base_url}\t{tags}\thealth={s.health}\tlast_success={last_success}\t"
                f"lag={lag}\tfailures={s.consecutive_failures}\tinterval={s.poll_interval}s\t"
                f"last_run={s.last_run_outcome or '-'}:{s.last_run_new or 0}/{s.last_run_fetched or 0}"
                + "".join(f"\t{key}={value}" for key, value in s.health_detail.items())
                + (f"\terror={s.last_error[:200]}" if s.consecutive_failures else "")
            )

    def handle_disable(self, *, id, **_):
        self._set_enabled(id, False)

    def handle_enable(self, *, id, **_):
        self._set_enabled(id, True)

    def _set_enabled(self, source_id: int, enabled: bool) -> None:
        if not Source.objects.filter(pk=source_id).update(enabled=enabled):
            raise CommandError(f"no source with id {source_id}")
        self.stdout.write(f"source {source_id} {'enabled' if enabled else 'disabled'}")
