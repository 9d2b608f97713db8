"""magma_ros: the Magma vision-language-action model as a ROS 2 robot policy.

The ROS-free core (``magma_ros.model``, ``magma_ros.codecs``, ``magma_ros.sim``,
``magma_ros.training``, ``magma_ros.image_codec``) imports no rclpy; the ROS layer
lives in ``magma_ros.ros``.
"""

from pkgutil import extend_path

# The generated interface modules (magma_ros.msg, magma_ros.srv and their
# typesupport libraries) may be installed in another directory named magma_ros
# than these sources (a development virtualenv); let the package span both.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
