# ROS 2 interface packages installed from PyPI wheels export include
# directories of the machine the wheel was built on (for example
# /opt/python/cp311-cp311/include/python3.11). CMake refuses to generate a build
# that links such an imported target. Dropping include directories that do not
# exist is harmless on a normal ROS install (it has none) and makes wheel-based
# prefixes build.
function(magma_ros_prune_missing_include_dirs)
  get_property(_targets DIRECTORY PROPERTY IMPORTED_TARGETS)
  foreach(_target ${_targets})
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_kept "")
    set(_changed FALSE)
    foreach(_dir ${_dirs})
      if(_dir MATCHES "^\\$<" OR EXISTS "${_dir}")
        list(APPEND _kept "${_dir}")
      else()
        set(_changed TRUE)
      endif()
    endforeach()
    if(_changed)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_kept}")
    endif()
  endforeach()
endfunction()
