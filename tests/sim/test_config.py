import dataclasses

import pytest

from magma_ros.sim import (
    CameraConfig,
    ConfigError,
    GripperConfig,
    PhysicsConfig,
    SceneConfig,
    ServoConfig,
    WorkcellConfig,
)


def test_defaults_are_valid():
    config = WorkcellConfig()
    assert config.servo.incoming_command_timeout == 0.1
    assert (config.servo.scale_linear, config.servo.scale_rotational) == (0.4, 0.8)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: PhysicsConfig(timestep=0.5), "physics.timestep"),
        (lambda: ServoConfig(command_in_type="radians"), "command_in_type"),
        (lambda: ServoConfig(incoming_command_timeout=0.0), "incoming_command_timeout"),
        (lambda: ServoConfig(scale_linear=-1.0), "scale_linear"),
        (lambda: GripperConfig(max_width=0.2), "max_width"),
        (lambda: SceneConfig(colors=("red", "purple")), "purple"),
        (lambda: SceneConfig(region_min=(0.7, 0.0), region_max=(0.6, 0.1)), "region_min"),
        (lambda: SceneConfig(min_separation=0.01), "min_separation"),
        (lambda: CameraConfig("cam", "frame", near=1.0, far=0.5), "near"),
        (lambda: WorkcellConfig(seed=-1), "seed"),
        (lambda: WorkcellConfig(home_joint_positions=(0.0,)), "home_joint_positions"),
        (lambda: WorkcellConfig(servo=ServoConfig(publish_period=0.005)), "publish_period"),
        (lambda: WorkcellConfig(scene=SceneConfig(cube_size=0.07), gripper=GripperConfig(max_width=0.06)), "cube_size"),
        (lambda: WorkcellConfig(cameras=(CameraConfig("a", "f"), CameraConfig("a", "g"))), "unique"),
    ],
)
def test_bad_values_are_named(factory, match):
    with pytest.raises(ConfigError, match=match):
        factory()


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        dataclasses.replace(ServoConfig(), scale_rotational=100.0)
