"""Moderation at scale: rule dry-runs over the stored posts, and a bulk reject with its undo.

    .venv/bin/python bench/moderation.py                     # 100,000 posts; bulk job over 50,000
    .venv/bin/python bench/moderation.py --posts 20000 --bulk 10000

In a database of its own (bench/common.py). The posts are written with one INSERT ... SELECT (a mix of
English, Ukrainian and Russian texts, 1 in 50 carrying a banned word), then it times:

- dry-runs (goal: <= 2 s for 100,000 posts): a new banned-words rule of 20 terms, the same rule after an
  edit (so the "release" count is computed too), a suspect-words rule, a links rule;
- a bulk reject of `--bulk` posts selected by a filter: creating the job (the selection, one INSERT ...
  SELECT), running it in this process in chunks (moderation.run_job, what the worker runs), and its undo.

It prints the figures next to their goals and never fails on them.
"""

from __future__ import annotations

import argparse
import time

from common import bench_database

TEXTS = [
    "Hoping the talks in Geneva lead somewhere, reading every update tonight",
    "Переговори в Стамбулі: чекаємо новин, думки з усіма, хто чекає вдома",
    "Переговоры снова отложены, никто не знает, что будет дальше",
    "The ceasefire proposal looks thin, see https://a.example/x and https://b.example/y and https://c.example/z",
    "Мир можливий лише з гарантіями безпеки, інакше це нова війна",
]
BANNED = ["зрада", "traitors", "sell-out", "капітуляція", "предатели"] + [f"slur{n}" for n in range(15)]


def fill(posts: int) -> None:
    from django.db import connection

    texts = "ARRAY[" + ", ".join(["%s"] * len(TEXTS)) + "]"
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO engagement_post (platform, external_id, uri, url, kind, created_at, collected_at, updated_at, "
            "language, html, text, hashtags, reply_to_external_id, reply_count, repost_count, like_count, raw, "
            "status, deletion_reason, fingerprint, reasons, reason_codes, decided_by) "
            "SELECT 'mastodon', 'https://bench.example/s/' || i, '', '', 'post', "
            "now() - (i || ' seconds')::interval, now(), now(), 'en', '', "
            f"({texts})[i %% {len(TEXTS)} + 1] || ' #' || i || CASE WHEN i %% 50 = 0 THEN ' зрада' ELSE '' END, "
            "ARRAY['ukrainepeacetalks'], '', 0, 0, 0, '{}'::jsonb, "
            "(ARRAY['pending', 'approved', 'flagged'])[i %% 3 + 1], '', '', '[]'::jsonb, '{}', 'system' "
            "FROM generate_series(1, %s) AS i",
            [*TEXTS, posts],
        )
        cursor.execute("ANALYZE engagement_post")


def timed(action):
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=100_000)
    parser.add_argument("--bulk", type=int, default=50_000)
    args = parser.parse_args()

    with bench_database() as name:
        from django.contrib.auth.models import Group, User

        from engagement import moderation
        from engagement.models import BulkJob, ModerationEvent, ModerationRule, Post

        fill(args.posts)
        print(f"database {name}: {Post.objects.count():,} posts\n")
        print(f"{'what':<52}{'s':>7}   result")
        rules = [
            ("dry-run: new banned rule, 20 terms", ModerationRule(name="banned", kind="banned", terms="\n".join(BANNED))),
            ("dry-run: suspect rule, 3 terms", ModerationRule(name="suspect", kind="suspect",
                                                                terms="ceasefire\nпереговори\nгарантіями")),
            ("dry-run: links rule (more than 2)", ModerationRule(name="links", kind="links", threshold=2)),
        ]
        for label, rule in rules:
            seconds, result = timed(lambda: moderation.dry_run(rule))
            print(f"{label:<52}{seconds:>7.2f}   {result.counts()}  (goal <= 2 s)")
        # A saved rule that already rejected posts, then edited: the dry-run also counts releases.
        saved = ModerationRule.objects.create(name="banned", kind="banned", terms="\n".join(BANNED))
        matched = [pk for pk, text in Post.objects.values_list("pk", "text") if "зрада" in text]
        Post.objects.filter(pk__in=matched).update(
            status="rejected", decided_by="rule", reasons=[{"rule_id": saved.pk, "code": "banned-word"}])
        saved.terms = "\n".join(BANNED[1:])
        seconds, result = timed(lambda: moderation.dry_run(saved))
        print(f"{'dry-run: the same rule edited (releases counted)':<52}{seconds:>7.2f}   {result.counts()}  "
              "(goal <= 2 s)")

        user = User.objects.create_user("bench-moderator")
        user.groups.add(Group.objects.get(name="Moderators"))
        user = User.objects.get(pk=user.pk)
        selection = Post.objects.exclude(status="rejected").order_by("id")
        cutoff = selection.values_list("id", flat=True)[args.bulk - 1]
        seconds, job = timed(lambda: moderation.create_job(
            selection.filter(id__lte=cutoff), to_state="rejected", reason_code="spam", user=user,
            kind=BulkJob.Kind.FILTER, description="bench", enqueue=False))
        print(f"{'bulk reject: select ' + format(job.total, ',') + ' posts by filter':<52}{seconds:>7.2f}")
        seconds, job = timed(lambda: moderation.run_job(job.pk))
        print(f"{'bulk reject: run (chunks of ' + str(moderation.JOB_CHUNK) + ')':<52}{seconds:>7.2f}   "
              f"{job.changed:,} changed, {job.changed / seconds:,.0f} posts/s")
        seconds, undo = timed(lambda: moderation.run_job(moderation.create_undo(job, user=user, enqueue=False).pk))
        print(f"{'undo: restore every previous state':<52}{seconds:>7.2f}   {undo.changed:,} restored, "
              f"{undo.changed / seconds:,.0f} posts/s")
        print(f"\naudit entries written: {ModerationEvent.objects.filter(job__in=[job, undo]).count():,}")


if __name__ == "__main__":
    main()
