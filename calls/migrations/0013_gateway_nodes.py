import django.db.models.deletion
import django.utils.timezone
import uuid
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('calls', '0012_dial_queue'),
    ]

    operations = [
        migrations.CreateModel(
            name='GatewayNode',
            fields=[
                ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False, verbose_name='node id')),
                ('host', models.CharField(max_length=255)),
                ('pid', models.PositiveIntegerField(verbose_name='process id')),
                ('started_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('heartbeat_at', models.DateTimeField(default=django.utils.timezone.now, verbose_name='last heartbeat')),
                ('suspected_at', models.DateTimeField(blank=True, null=True)),
                ('stopped_at', models.DateTimeField(blank=True, null=True)),
                ('stop_reason', models.CharField(blank=True, default='', max_length=255)),
            ],
            options={
                'ordering': ['-started_at'],
                'indexes': [models.Index(fields=['stopped_at', 'heartbeat_at'], name='gateway_node_live')],
            },
        ),
        migrations.AddField(
            model_name='mediastream',
            name='node',
            field=models.ForeignKey(blank=True, help_text="The gateway process holding the stream's socket (empty when it was opened outside a serving gateway).", null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='media_streams', to='calls.gatewaynode'),
        ),
        migrations.AddIndex(
            model_name='mediastream',
            index=models.Index(fields=['node', 'closed_at'], name='media_stream_node_open'),
        ),
    ]
