import json
import os

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .apps import ShopConfig
from .models import Category, Product


def replica_status(request):
    status = ShopConfig.replica.status() if ShopConfig.replica is not None else None
    return JsonResponse({
        "pid": os.getpid(),
        "role": status and status["role"],
        "replicator_pid": status and status["replicator_pid"],
        "published_rows": status and status["published_rows"],
        "attached_handles": status and status["attached_handles"],
        "paused_tables": status and status["paused_tables"],
        "unsent_rows": status and status["unsent_rows"],
        "pending_changes": status and status["pending_changes"],
    })


@csrf_exempt
def create_product(request):
    if request.method != "POST":
        return HttpResponse(status=405)
    body = json.loads(request.body)
    category, _ = Category.objects.get_or_create(name=body["category"])
    product = Product.objects.create(ref=body["ref"], name=body["name"], price=body.get("price", 0),
                                     category=category)
    return JsonResponse({"id": product.id, "pid": os.getpid()})
