from django.urls import path, register_converter

from items import views


class ItemIdConverter:
    """Ids that fit a 64-bit primary key: longer digit strings are a 404, not a
    database overflow error."""

    regex = "[1-9][0-9]{0,17}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(ItemIdConverter, "item_id")

urlpatterns = [
    path("items", views.ItemCollection.as_view(), name="items"),
    path("items/bulk", views.BulkItems.as_view(), name="items-bulk"),
    path("items/restock", views.RestockItems.as_view(), name="items-restock"),
    path("items/stats", views.ItemStats.as_view(), name="items-stats"),
    path("items/export", views.ItemExport.as_view(), name="items-export"),
    path("items/events", views.ItemEvents.as_view(), name="items-events"),
    path("items/<item_id:item_id>", views.ItemDetail.as_view(), name="item"),
    path("categories", views.CategoryCollection.as_view(), name="categories"),
]
