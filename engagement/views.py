from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from engagement import health


@never_cache
@require_GET
def healthz(request):
    """200 when the database, Redis, the worker and beat are all alive; 503 otherwise."""
    ok, report = health.check()
    return JsonResponse({"ok": ok, **report}, status=200 if ok else 503)
