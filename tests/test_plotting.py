import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mlhelpers.data.labelled import LabelledDataset  # noqa: E402
from mlhelpers.plotting import plot_learning_curves, plot_regression_tasks, show_episode  # noqa: E402
from mlhelpers.samplers.episodic import EpisodicSampler  # noqa: E402
from mlhelpers.samplers.regression import SinusoidTasks  # noqa: E402
from mlhelpers.training import History  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def image_dataset(channels: int = 1, num_classes: int = 6, per_class: int = 8) -> LabelledDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return LabelledDataset(torch.rand(len(labels), channels, 8, 8, generator=g), labels,
                           [f"c{c}" for c in range(num_classes)])


def images_in(fig: Figure) -> list:
    return [image for ax in fig.axes for image in ax.get_images()]


def test_show_episode_draws_every_support_and_query_image():
    task = EpisodicSampler(image_dataset(), 4, 2, 3, seed=0).sample(2)
    fig = show_episode(task, index=1, title="4-way 2-shot")
    assert isinstance(fig, Figure)
    images = images_in(fig)
    assert len(images) == 4 * (2 + 3)
    assert all(image.get_cmap().name == "gray_r" for image in images)
    # Each class heads one column, in both the support and the query part.
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"class {c}" for c in range(4)] * 2
    texts = [sub._suptitle.get_text() for sub in fig.subfigs]
    assert texts[0].startswith("Support set (2 per class") and texts[1].startswith("Query set (3 per class")
    assert fig._suptitle.get_text() == "4-way 2-shot"
    # The support images are the task's own, in class order.
    first_class0 = task.support_x[1][task.support_y[1] == 0][0, 0]
    assert torch.equal(torch.as_tensor(images[0].get_array().data), first_class0)


def test_show_episode_caps_rows_and_handles_rgb():
    task = EpisodicSampler(image_dataset(channels=3), 3, 4, 4, seed=0).sample(1)
    fig = show_episode(task, max_per_class=2)
    images = images_in(fig)
    assert len(images) == 3 * (2 + 2)
    assert images[0].get_array().shape == (8, 8, 3)
    assert "first 2 shown" in fig.subfigs[0]._suptitle.get_text()


def test_show_episode_rejects_regression_tasks_and_bad_index():
    task = SinusoidTasks(5, 5, seed=0).sample(2)
    with pytest.raises(ValueError, match="show_episode needs image episodes"):
        show_episode(task)
    image_task = EpisodicSampler(image_dataset(), 2, 1, 1, seed=0).sample(2)
    with pytest.raises(IndexError, match="index=2 is out of range for a batch of 2 tasks"):
        show_episode(image_task, index=2)


def history(offset: float = 0.0, metric: str = "accuracy") -> History:
    steps = list(range(1, 201))
    return History(
        steps=steps,
        train_loss=[2.0 / (1 + 0.05 * s) + offset for s in steps],
        val_steps=[50, 100, 150, 200],
        val_metric=[0.5, 0.6, 0.7, 0.75],
        val_ci=[0.05, 0.04, 0.04, 0.03],
        metric=metric,
    )


def test_learning_curves_single_history():
    ax = plot_learning_curves(history(), smoothing=20)
    assert isinstance(ax, Axes)
    lines = ax.get_lines()
    assert len(lines) == 2  # raw (faint) and smoothed loss
    raw, smooth = lines
    assert raw.get_alpha() < 0.5
    assert len(smooth.get_xdata()) == 200 - 20 + 1
    assert smooth.get_ydata()[0] == pytest.approx(sum(history().train_loss[:20]) / 20)
    twin = ax.twin_axis
    assert twin is not None and len(twin.get_lines()) == 1
    assert len(twin.collections) == 1  # the CI band
    assert "accuracy" in twin.get_ylabel()


def test_learning_curves_compare_runs_on_given_axes():
    fig, ax = plt.subplots()
    out = plot_learning_curves({"ProtoNet": history(), "MAML": history(0.5)}, ax=ax)
    assert out is ax
    assert len(ax.get_lines()) == 4
    legend = out.twin_axis.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert any(label.startswith("ProtoNet: train loss") for label in labels)
    assert "MAML: validation accuracy" in labels


def test_learning_curves_without_validation():
    ax = plot_learning_curves(History(steps=[1, 2, 3], train_loss=[1.0, 0.8, 0.7]))
    assert ax.twin_axis is None
    assert len(ax.get_lines()) == 2
    with pytest.raises(TypeError, match="history must be a History"):
        plot_learning_curves([1, 2, 3])


def test_regression_tasks_with_truth_and_predictions():
    task = SinusoidTasks(5, 10, seed=0).sample(6)
    truth = lambda x, t: SinusoidTasks.function(x, t.info["amplitude"], t.info["phase"])  # noqa: E731
    fig = plot_regression_tasks(task, n=5, true_fn=truth, predictions={"zero": torch.zeros(6, 10, 1)})
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5
    ax = fig.axes[0]
    assert len(ax.collections) == 2  # support and query scatter
    true_line, prediction = ax.get_lines()
    # The drawn truth is the task's sine wave.
    x = torch.as_tensor(true_line.get_xdata())
    expected = task.info["amplitude"][0] * torch.sin(x - task.info["phase"][0])
    torch.testing.assert_close(torch.as_tensor(true_line.get_ydata()).float(), expected.float(), atol=1e-5, rtol=0)
    assert (prediction.get_ydata() == 0).all()
    assert (torch.as_tensor(prediction.get_xdata()).diff() >= 0).all()  # query x sorted


def test_regression_tasks_validates_shapes():
    task = SinusoidTasks(5, 10, seed=0).sample(2)
    fig = plot_regression_tasks(task, n=4)  # only 2 tasks to show
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match=r"predictions\['prediction'\] must have shape"):
        plot_regression_tasks(task, predictions=torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="1-D regression tasks"):
        plot_regression_tasks(EpisodicSampler(image_dataset(), 2, 1, 1, seed=0).sample(1))
