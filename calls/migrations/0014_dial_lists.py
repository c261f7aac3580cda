import django.db.models.deletion
import django.utils.timezone
import uuid
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('calls', '0013_gateway_nodes'),
    ]

    operations = [
        migrations.CreateModel(
            name='DialList',
            fields=[
                ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False, verbose_name='dial list id')),
                ('name', models.CharField(help_text='The file it came from.', max_length=255)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('rows_total', models.PositiveIntegerField(default=0, help_text='Data rows in the file (the header not counted).', verbose_name='rows')),
                ('rows_rejected', models.PositiveIntegerField(default=0, help_text='Rows reported as bad and skipped.', verbose_name='rows refused')),
            ],
            options={
                'ordering': ['-created_at'],
            },
        ),
        migrations.CreateModel(
            name='PendingDial',
            fields=[
                ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False, verbose_name='call id')),
                ('row', models.PositiveIntegerField(blank=True, help_text='Its row in the file (the header is row 1).', null=True)),
                ('idempotency_key', models.CharField(max_length=255, unique=True)),
                ('status', models.CharField(choices=[('pending', 'waiting for its time or a free line'), ('admitted', "call written (its outcome is the call's)"), ('cancelled', 'Cancelled'), ('failed', 'refused when its turn came'), ('rejected', 'bad row, skipped')], default='pending', max_length=10)),
                ('due_at', models.DateTimeField(blank=True, help_text='Not dialed before this time.', null=True)),
                ('to_number', models.CharField(blank=True, default='', max_length=64, verbose_name='to')),
                ('message', models.TextField(blank=True, default='')),
                ('mode', models.CharField(blank=True, default='', help_text='Empty: the configured default.', max_length=12)),
                ('dtmf_sequence', models.CharField(blank=True, default='', max_length=64, verbose_name='DTMF sequence')),
                ('session_key', models.CharField(blank=True, default='', max_length=255)),
                ('requester_session_key', models.CharField(blank=True, default='', max_length=255)),
                ('agent_id', models.CharField(blank=True, default='', max_length=128)),
                ('error', models.TextField(blank=True, default='', help_text='Why the row was refused, or why admission failed.')),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('admitted_at', models.DateTimeField(blank=True, null=True)),
                ('dial_list', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='dials', to='calls.diallist')),
            ],
            options={
                'ordering': ['due_at', 'created_at', 'row'],
                'indexes': [models.Index(fields=['status', 'due_at'], name='pending_dial_status_due'), models.Index(fields=['dial_list', 'row'], name='pending_dial_list_row')],
            },
        ),
    ]
