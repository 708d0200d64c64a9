from django.urls import path

from items.consumers import ItemsConsumer

websocket_urlpatterns = [
    path("ws/items", ItemsConsumer.as_asgi()),
]
