import math

import numpy as np
import pybullet as pb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magma_ros.sim.transforms import (
    Pose,
    matrix_to_quat,
    quat_from_axis_angle,
    quat_from_rpy,
    quat_to_matrix,
    rotation_vector,
    yaw_of,
)

angles = st.floats(-math.pi, math.pi, allow_nan=False)


def same_rotation(a, b, tol=1e-9):
    return min(np.abs(np.asarray(a) - b).max(), np.abs(np.asarray(a) + b).max()) < tol


@given(angles, angles, angles)
@settings(max_examples=50, deadline=None)
def test_rpy_matches_pybullet(roll, pitch, yaw):
    assert same_rotation(quat_from_rpy(roll, pitch, yaw), pb.getQuaternionFromEuler([roll, pitch, yaw]), 1e-7)


@given(angles, angles, angles)
@settings(max_examples=50, deadline=None)
def test_matrix_round_trip(roll, pitch, yaw):
    q = quat_from_rpy(roll, pitch, yaw)
    assert same_rotation(matrix_to_quat(quat_to_matrix(q)), q)
    m = quat_to_matrix(q)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)


@given(angles, angles, angles, angles, angles, angles)
@settings(max_examples=50, deadline=None)
def test_compose_inverse_is_identity(r1, p1, y1, r2, p2, y2):
    a = Pose([0.1, -0.2, 0.3], quat_from_rpy(r1, p1, y1))
    b = Pose([-0.5, 0.4, 0.0], quat_from_rpy(r2, p2, y2))
    ident = a.compose(b).compose(b.inverse()).compose(a.inverse())
    np.testing.assert_allclose(ident.position, 0.0, atol=1e-12)
    np.testing.assert_allclose(ident.matrix(), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(a.compose(b).matrix(), a.matrix() @ b.matrix(), atol=1e-12)


def test_rotation_vector_and_yaw():
    q = quat_from_axis_angle([0, 0, 1], 0.7)
    np.testing.assert_allclose(rotation_vector(q), [0, 0, 0.7], atol=1e-12)
    assert yaw_of(q) == pytest.approx(0.7)
    np.testing.assert_allclose(rotation_vector([0, 0, 0, 1]), 0.0)


def test_pose_validates_and_is_read_only():
    with pytest.raises(ValueError, match="shape"):
        Pose([0, 0], [0, 0, 0, 1])
    with pytest.raises(ValueError, match="finite"):
        Pose([0, 0, float("nan")], [0, 0, 0, 1])
    pose = Pose([1, 2, 3], [0, 0, 0, 2])
    np.testing.assert_allclose(pose.orientation, [0, 0, 0, 1])
    with pytest.raises(ValueError):
        pose.position[0] = 5.0
