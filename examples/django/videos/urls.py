from django.urls import path

from . import views

urlpatterns = [
    path("videos/<int:pk>", views.show_video, name="video"),
    path("videos/<int:pk>/subtitles", views.request_video_subtitles, name="video-subtitles"),
    path("subtitle-requests/<str:request_id>", views.subtitle_status, name="subtitle-status"),
    path("subtitle-requests/<str:request_id>/cancel", views.cancel_subtitles, name="subtitle-cancel"),
]
