from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0003_taskdelivery"),
    ]

    operations = [
        migrations.AddField(
            model_name="pendingtask",
            name="trace",
            field=models.JSONField(blank=True, null=True),
        ),
    ]
