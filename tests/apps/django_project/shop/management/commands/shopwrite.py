"""The app's writes for the acceptance suite, through the ORM or the admin (Django's test Client, logged in).
Each committed change is appended to the journal (one JSON line) after its commit returned: the ledger."""

import json
import os
import time
from pathlib import Path

from django.core.management.base import BaseCommand
from django.db import transaction

from shop.models import Category, Product, Review


class Journal:
    def __init__(self, path):
        self.file = open(path, "a")

    def write(self, op, table, label, label_column="ref", **values):
        self.file.write(json.dumps({"at": time.time(), "op": op, "table": table, "label_column": label_column, "label": label,
                                    "values": values}) + "\n")
        self.file.flush()


def has_note():
    return any(f.name == "note" for f in Product._meta.get_fields())


class Command(BaseCommand):
    help = "Writes for the acceptance suite"

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["create", "writer", "admin", "update", "cascade", "note"])
        parser.add_argument("--journal", required=True)
        parser.add_argument("--prefix", default="p")
        parser.add_argument("--count", type=int, default=10)
        parser.add_argument("--category", default="tools")
        parser.add_argument("--stop-file")
        parser.add_argument("--pace-ms", type=int, default=20)
        parser.add_argument("--user", default="admin")

    def handle(self, *args, action, journal, prefix, count, category, stop_file, pace_ms, user, **_):
        from shop.apps import ShopConfig

        replica = ShopConfig.replica
        self.stdout.write(f"replica role: {replica.status()['role'] if replica else None}\n")
        self.journal = Journal(journal)
        getattr(self, action)(prefix=prefix, count=count, category=category, stop_file=stop_file,
                              pace_ms=pace_ms, user=user)

    def _category(self, name):
        cat, created = Category.objects.get_or_create(name=name)
        if created:
            self.journal.write("created", "shop_category", name, label_column="name")
        return cat

    def create(self, prefix, count, category, **_):
        """Products, each with a review, each pair in one transaction."""
        cat = self._category(category)
        for i in range(count):
            ref = f"{prefix}-{i}"
            with transaction.atomic():
                product = Product.objects.create(ref=ref, name=f"product {ref}", price=i, category=cat)
                Review.objects.create(ref=f"r-{ref}", product=product, stars=1 + i % 5)
            self.journal.write("created", "shop_product", ref, name=f"product {ref}", price=i)
            self.journal.write("created", "shop_review", f"r-{ref}", stars=1 + i % 5)

    def writer(self, prefix, category, stop_file, pace_ms, **_):
        """Creates products until the stop file exists (a node that keeps serving while others migrate)."""
        cat = self._category(category)
        i = 0
        while not os.path.exists(stop_file):
            ref = f"{prefix}-{i}"
            Product.objects.create(ref=ref, name=f"product {ref}", price=i, category=cat)
            self.journal.write("created", "shop_product", ref, name=f"product {ref}", price=i)
            i += 1
            time.sleep(pace_ms / 1000)
        self.stdout.write(f"wrote {i}\n")

    def update(self, prefix, count, **_):
        """Raises the price of the first ``count`` products whose ref starts with the prefix."""
        for product in Product.objects.filter(ref__startswith=f"{prefix}-").order_by("id")[:count]:
            product.price += 1000
            product.save(update_fields=["price"])
            self.journal.write("updated", "shop_product", product.ref, price=product.price)

    def note(self, prefix, count, **_):
        """Sets the new column (migration 0002) on products of this prefix."""
        assert has_note(), "the model has no note field: migration 0002 is not deployed here"
        for product in Product.objects.filter(ref__startswith=f"{prefix}-").order_by("id")[:count]:
            product.note = f"note from {os.environ.get('NODE_NAME', '?')}"
            product.save(update_fields=["note"])
            self.journal.write("updated", "shop_product", product.ref, note=product.note)

    def cascade(self, category, **_):
        """Deletes a category: Django deletes its products and their reviews first (on_delete=CASCADE)."""
        cat = Category.objects.get(name=category)
        products = list(cat.products.all())
        reviews = list(Review.objects.filter(product__in=products))
        cat.delete()
        self.journal.write("deleted", "shop_category", category, label_column="name")
        for product in products:
            self.journal.write("deleted", "shop_product", product.ref)
        for review in reviews:
            self.journal.write("deleted", "shop_review", review.ref)

    def admin(self, prefix, count, category, user, **_):
        """Through the admin, logged in: adds products, changes one, deletes one."""
        from django.test import Client

        client = Client()
        assert client.login(username=user, password="secret"), f"cannot log in as {user}"
        cat = self._category(category)
        for i in range(count):
            ref = f"{prefix}-{i}"
            data = {"ref": ref, "name": f"admin {ref}", "price": str(i), "category": str(cat.id)}
            if has_note():
                data["note"] = ""
            response = client.post("/admin/shop/product/add/", data)
            assert response.status_code == 302, response.content.decode()[:2000]
            self.journal.write("created", "shop_product", ref, name=f"admin {ref}", price=i)
        first = Product.objects.get(ref=f"{prefix}-0")
        data = {"ref": first.ref, "name": "changed in the admin", "price": "777", "category": str(cat.id)}
        if has_note():
            data["note"] = ""
        response = client.post(f"/admin/shop/product/{first.id}/change/", data)
        assert response.status_code == 302, response.content.decode()[:2000]
        self.journal.write("updated", "shop_product", first.ref, name="changed in the admin", price=777)
        if count > 1:
            last = Product.objects.get(ref=f"{prefix}-{count - 1}")
            response = client.post(f"/admin/shop/product/{last.id}/delete/", {"post": "yes"})
            assert response.status_code == 302, response.content.decode()[:2000]
            self.journal.write("deleted", "shop_product", last.ref)
