# Installs the bnorm build tree into a scratch prefix, then configures,
# builds and runs the downstream consumers (PROGRAMS, comma-separated, as a
# semicolon would split the test's command; default "downstream") against it.
if(NOT DEFINED PROGRAMS)
  set(PROGRAMS downstream)
endif()
string(REPLACE "," ";" PROGRAMS "${PROGRAMS}")
file(REMOVE_RECURSE ${WORK_DIR})
function(step)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "downstream step failed (${rc}): ${ARGV}")
  endif()
endfunction()
step(${CMAKE_COMMAND} --install ${BNORM_BUILD_DIR} --prefix ${WORK_DIR}/prefix)
# bnorm::bnorm, what users link, carries none of the reference (its own
# library, bnorm::reference): no bnorm::reference symbol in libbnorm.
file(GLOB core_libs ${WORK_DIR}/prefix/lib*/libbnorm.a ${WORK_DIR}/prefix/lib*/libbnorm.so)
file(GLOB reference_libs ${WORK_DIR}/prefix/lib*/libbnorm_reference.*)
if(NOT core_libs OR NOT reference_libs)
  message(FATAL_ERROR "downstream: libbnorm (${core_libs}) or libbnorm_reference "
                      "(${reference_libs}) not installed")
endif()
foreach(lib ${core_libs})
  file(STRINGS ${lib} hits REGEX "5bnorm9reference" LIMIT_COUNT 1)
  if(hits)
    message(FATAL_ERROR "downstream: ${lib} contains bnorm::reference symbols")
  endif()
endforeach()
step(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/build -G Ninja
     -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix
     "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" "-DCMAKE_EXE_LINKER_FLAGS=${LINK_FLAGS}")
step(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
foreach(program ${PROGRAMS})
  step(${WORK_DIR}/build/${program})
endforeach()
