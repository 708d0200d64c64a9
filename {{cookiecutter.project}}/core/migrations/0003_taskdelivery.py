from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0002_pendingtask"),
    ]

    operations = [
        migrations.CreateModel(
            name="TaskDelivery",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True,
                        primary_key=True,
                        serialize=False,
                        verbose_name="ID",
                    ),
                ),
                ("job", models.CharField(max_length=64, unique=True)),
                ("task", models.CharField(max_length=100)),
                ("args", models.JSONField()),
                ("deliveries", models.PositiveIntegerField(default=1)),
                ("started_at", models.DateTimeField()),
                ("worker", models.CharField(max_length=100)),
                (
                    "dead_lettered_at",
                    models.DateTimeField(blank=True, db_index=True, null=True),
                ),
            ],
            options={
                "ordering": ["id"],
            },
        ),
    ]
