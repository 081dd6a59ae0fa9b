from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_product_note")]

    # Django rebuilds the table on SQLite: CREATE new__shop_product, INSERT ... SELECT, DROP, RENAME.
    operations = [
        migrations.AlterField(model_name="product", name="name", field=models.CharField(max_length=200)),
    ]
