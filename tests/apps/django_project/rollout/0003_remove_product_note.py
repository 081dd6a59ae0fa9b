from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_product_note")]

    # A nullable column without an index: Django drops it with ALTER TABLE ... DROP COLUMN on SQLite.
    operations = [
        migrations.RemoveField(model_name="product", name="note"),
    ]
