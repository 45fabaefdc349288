"""The dashboard's Plotly figures (built from plain data; the pages only place them)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

GREEN, ORANGE, BROWN = "#2E7D32", "#E65100", "#8D6E63"


def bar_chart(x: list, y: list, labels: dict, *, title: str | None = None, text: list | None = None,
              orientation: str = "v") -> go.Figure:
    """A one-colour bar chart (photos per class, class probabilities)."""
    fig = px.bar(x=x, y=y, orientation=orientation, labels=labels, title=title, text=text)
    fig.update_traces(marker_color=GREEN)
    return fig


def class_counts_chart(counts: dict) -> go.Figure:
    fig = bar_chart(list(counts), list(counts.values()), {"x": "class", "y": "photos"}, title="Photos per class",
                    text=list(counts.values()))
    fig.update_layout(height=320, margin=dict(t=40, b=10))
    return fig


def probabilities_chart(classes: list[str], probabilities: list[float]) -> go.Figure:
    order = sorted(zip(classes, probabilities), key=lambda cp: cp[1])
    fig = bar_chart([p for _, p in order], [c for c, _ in order], {"x": "probability", "y": "class"},
                    text=[f"{p:.0%}" for _, p in order], orientation="h")
    fig.update_layout(height=max(200, 45 * len(order) + 80), margin=dict(t=10, b=10),
                      xaxis=dict(range=[0, 1], tickformat=".0%"))
    return fig


def compare_scatter(plotted: pd.DataFrame) -> go.Figure:
    """Held-out accuracy against training time (log scale), one marker per run."""
    fig = px.scatter(
        plotted, x="training time (s)", y="accuracy", color="method", symbol="backbone", log_x=True,
        hover_name="run",
        hover_data={"classifier": True, "views": True, "resolution (px)": True, "held-out split": True,
                    "balanced accuracy": ":.3f", "macro F1": ":.3f", "training time (s)": ":.1f",
                    "training photos": True, "test photos": True, "dataset": True, "settings": True,
                    "started": True, "method": False, "backbone": True, "accuracy": ":.3f"},
        color_discrete_map={"top-tuned": GREEN, "fine-tuned": ORANGE},
        labels={"training time (s)": "training time (seconds, log scale)", "accuracy": "held-out accuracy"},
    )
    fig.update_traces(marker=dict(size=13, line=dict(width=1, color="white")))
    add_pareto_front(fig, plotted)
    times = plotted["training time (s)"]
    if len(times):  # half a decade either side, ticks at 1-2-5 steps in plain seconds
        low, high = math.log10(times.min()) - 0.5, math.log10(times.max()) + 0.5
        ticks = [m * 10.0 ** e for e in range(math.floor(low), math.ceil(high) + 1) for m in (1, 2, 5)
                 if low <= math.log10(m * 10.0 ** e) <= high]
        fig.update_xaxes(range=[low, high], tickvals=ticks, ticktext=[f"{t:,g}" for t in ticks])
    fig.update_layout(height=460, margin=dict(t=30, b=10), yaxis=dict(range=[0, 1.02], tickformat=".0%"))
    return fig


FRONT_NAME = "best trade-offs (Pareto front)"


def add_pareto_front(fig: go.Figure, plotted: pd.DataFrame) -> None:
    """Ring the runs on the Pareto front (``best trade-off``) and join them with a staircase: nothing beats them
    on both accuracy and training time."""
    if "best trade-off" not in plotted:
        return
    front = plotted[plotted["best trade-off"].astype(bool)].sort_values("training time (s)")
    if front.empty:
        return
    fig.add_trace(go.Scatter(x=front["training time (s)"], y=front["accuracy"], mode="lines+markers", name=FRONT_NAME,
                             line=dict(color=BROWN, dash="dot", shape="hv", width=1.5),
                             marker=dict(size=24, symbol="circle-open", color=BROWN, line=dict(width=2)),
                             hoverinfo="skip"))


def finetune_curve(curve: list[dict]) -> go.Figure | None:
    """Training loss and validation accuracy per epoch (None before the first epoch)."""
    frame = pd.DataFrame(curve)
    if frame.empty or "epoch" not in frame:
        return None
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if "train_loss" in frame and frame["train_loss"].notna().any():
        fig.add_trace(go.Scatter(x=frame["epoch"], y=frame["train_loss"], name="training loss",
                                 mode="lines+markers", line=dict(color=BROWN)), secondary_y=False)
    if "val_accuracy" in frame and frame["val_accuracy"].notna().any():
        fig.add_trace(go.Scatter(x=frame["epoch"], y=frame["val_accuracy"], name="validation accuracy",
                                 mode="lines+markers", line=dict(color=GREEN)), secondary_y=True)
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(title_text="training loss", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text="validation accuracy", secondary_y=True, range=[0, 1.02], tickformat=".0%",
                     dtick=0.2, showgrid=False)
    fig.update_layout(height=340, margin=dict(t=30, b=10), legend=dict(orientation="h", y=1.15))
    return fig


def confusion_figure(matrix: np.ndarray, classes: list[str]) -> go.Figure:
    """The confusion matrix as a heatmap, with one clickable marker per cell (heatmaps themselves cannot be
    selected in Plotly); choosing a cell shows its photos."""
    n = len(classes)
    true_idx, pred_idx = np.meshgrid(range(n), range(n), indexing="ij")
    true_names = [classes[i] for i in true_idx.ravel()]
    pred_names = [classes[j] for j in pred_idx.ravel()]
    counts = matrix.ravel()
    fig = go.Figure()
    fig.add_trace(go.Heatmap(z=matrix, x=classes, y=classes, colorscale="Greens", showscale=False,
                             text=matrix, texttemplate="%{text}", textfont=dict(size=16), hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=pred_names, y=true_names, mode="markers", customdata=np.stack([true_names, pred_names], axis=1),
        marker=dict(symbol="square", size=max(14, 240 // max(n, 1)), opacity=0, color="black"),
        hovertemplate="true: %{customdata[0]}<br>predicted: %{customdata[1]}<br>%{text} photo(s)<extra></extra>",
        text=counts, showlegend=False))
    fig.update_layout(xaxis=dict(title="predicted class", side="bottom"),
                      yaxis=dict(title="true class", autorange="reversed"),
                      height=max(360, 70 * n + 160), margin=dict(t=20, b=10), clickmode="event+select",
                      dragmode=False)
    return fig


def versions_chart(frame: pd.DataFrame) -> go.Figure:
    """Held-out accuracy of each dataset version side by side: one group of bars per version (``v1`` and its edits
    since the original, on two lines under the bars), one bar per setting (backbone + classifier + views), the
    newest run of each; the legend above the plot; from ``version_history.versions_frame``."""
    newest = frame.groupby(["source", "version", "setting"], sort=False).tail(1).copy()
    several = newest["source"].nunique() > 1
    newest["version shown"] = [(f"{src} · " if several else "") + f"<b>{v}</b><br>{edits}"
                               for src, v, edits in zip(newest["source"], newest["version"], newest["edits"])]
    fig = px.bar(newest, x="version shown", y="accuracy", color="setting", barmode="group",
                 text=newest["accuracy"].map("{:.1%}".format),
                 hover_data=["version id", "held-out photos", "photos", "run"],
                 labels={"version shown": "dataset version (edits since the original)", "accuracy": "held-out accuracy",
                         "setting": ""},
                 color_discrete_sequence=[GREEN, ORANGE, BROWN, "#1565C0", "#6A1B9A"])
    fig.update_layout(height=420, margin=dict(t=10, b=10), yaxis=dict(range=[0, 1.1], tickformat=".0%"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0, xanchor="left"))
    fig.update_xaxes(tickangle=0, automargin=True)
    return fig
