"""Create the lock row that serializes outbound admissions across processes."""
from django.db import migrations


def create_lock(apps, schema_editor):
    apps.get_model("calls", "GatewayLock").objects.get_or_create(name="admission")


class Migration(migrations.Migration):
    dependencies = [("calls", "0001_initial")]
    operations = [migrations.RunPython(create_lock, migrations.RunPython.noop)]
