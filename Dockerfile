# The image behind docker-compose.yml's web, worker and beat services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ENGAGEMENT_DATA_DIR=/var/lib/engagement \
    STATIC_ROOT=/app/staticfiles

WORKDIR /app
COPY pyproject.toml README.md manage.py ./
COPY engagement engagement
COPY worker worker
RUN pip install --no-cache-dir . \
 && useradd --system --create-home --home-dir /home/app app \
 && mkdir -p /var/lib/engagement \
 && chown app:app /var/lib/engagement \
 && DATABASE_URL=postgresql://build@localhost/build REDIS_URL=redis://localhost:6379/0 SECRET_KEY=collectstatic-only \
    python manage.py collectstatic --noinput \
 && chown -R app:app /app/staticfiles

USER app
EXPOSE 8000
CMD ["gunicorn", "engagement.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3"]
