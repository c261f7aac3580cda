import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('calls', '0009_realtime_stream_token'),
    ]

    operations = [
        migrations.CreateModel(
            name='AdminLoginFailure',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('username', models.CharField(max_length=150)),
                ('ip_address', models.CharField(max_length=45, verbose_name='client address')),
                ('failed_at', models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                'indexes': [
                    models.Index(fields=['username', 'ip_address', 'failed_at'], name='admin_login_failure_key'),
                    models.Index(fields=['failed_at'], name='admin_login_failure_at'),
                ],
            },
        ),
    ]
