"""Read-mostly admin views of labeling records (changes go through the API and its actions)."""

from django.contrib import admin

from labeling.models import Judgement, Project, Report, Snapshot


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "task_type", "overlap", "archived", "created_at")


@admin.register(Judgement)
class JudgementAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "item", "annotator", "choice", "strength", "created_at")
    list_filter = ("project",)


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ("id", "category", "severity", "status", "reporter", "created_at")
    list_filter = ("status", "category")


@admin.register(Snapshot)
class SnapshotAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "version", "content_sha256", "created_at")
    readonly_fields = [f.name for f in Snapshot._meta.fields]
