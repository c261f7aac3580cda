from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('calls', '0010_admin_login_failure'),
    ]

    operations = [
        migrations.AddField(
            model_name='call',
            name='end_attempts',
            field=models.PositiveSmallIntegerField(default=0, verbose_name='failed hang-up attempts'),
        ),
        migrations.AddField(
            model_name='call',
            name='end_retry_at',
            field=models.DateTimeField(blank=True, null=True, verbose_name='next hang-up attempt'),
        ),
        migrations.AddIndex(
            model_name='call',
            index=models.Index(fields=['end_retry_at'], name='call_end_retry_at'),
        ),
    ]
