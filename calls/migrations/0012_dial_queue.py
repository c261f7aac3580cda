from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('calls', '0011_call_end_attempts'),
    ]

    operations = [
        migrations.AddField(
            model_name='call',
            name='dial_attempts',
            field=models.PositiveSmallIntegerField(default=0, verbose_name='dial requests sent'),
        ),
        migrations.AddField(
            model_name='call',
            name='dial_claim_token',
            field=models.UUIDField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='call',
            name='dial_claimed_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='call',
            name='dial_dtmf',
            field=models.TextField(blank=True, default='', help_text='Digits the dial request carries (carriers that dial with them); see pending DTMF for the others.', verbose_name='DTMF sent with the dial'),
        ),
        migrations.AddField(
            model_name='call',
            name='dial_queued_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='call',
            name='dial_requested_at',
            field=models.DateTimeField(blank=True, null=True, verbose_name='dial request sent'),
        ),
        migrations.AddField(
            model_name='call',
            name='dialed_at',
            field=models.DateTimeField(blank=True, null=True, verbose_name='carrier accepted the dial'),
        ),
        migrations.AddField(
            model_name='call',
            name='idempotency_key',
            field=models.CharField(blank=True, max_length=255, null=True, unique=True),
        ),
    ]
