from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = []  # noqa: RUF012  # Django's migration format: a plain class attribute

    operations = [  # noqa: RUF012  # Django's migration format: a plain class attribute
        migrations.CreateModel(
            name="Video",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("title", models.CharField(max_length=200)),
                ("upload_id", models.CharField(max_length=128)),
                ("subtitles_request_id", models.CharField(blank=True, max_length=128)),
                ("subtitles_track_id", models.CharField(blank=True, max_length=128)),
                ("subtitles_error", models.CharField(blank=True, max_length=64)),
            ],
        ),
    ]
