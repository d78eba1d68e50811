# ctest hashes_thread_invariance: bnorm_hashes on 1 and on 2 threads must
# print the same lines (results do not depend on the thread count).
#   cmake -DHASHES=path/to/bnorm_hashes -DWORK_DIR=dir -P compare_threads.cmake
file(MAKE_DIRECTORY ${WORK_DIR})
foreach(threads 1 2)
  execute_process(COMMAND ${HASHES} --threads ${threads}
    OUTPUT_FILE ${WORK_DIR}/threads${threads}.txt RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "bnorm_hashes --threads ${threads} failed (${rc})")
  endif()
endforeach()
file(STRINGS ${WORK_DIR}/threads1.txt one)
list(LENGTH one count)
if(count EQUAL 0)
  message(FATAL_ERROR "bnorm_hashes printed nothing")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK_DIR}/threads1.txt
  ${WORK_DIR}/threads2.txt RESULT_VARIABLE differ)
if(NOT differ EQUAL 0)
  # Name the outputs that differ (the walk is slow, so only on failure).
  file(STRINGS ${WORK_DIR}/threads2.txt two)
  set(shown 0)
  math(EXPR last "${count} - 1")
  foreach(i RANGE 0 ${last})
    list(GET one ${i} a)
    list(GET two ${i} b)
    if(NOT a STREQUAL b AND shown LESS 10)
      message("1 thread:  ${a}\n2 threads: ${b}")
      math(EXPR shown "${shown} + 1")
    endif()
  endforeach()
  message(FATAL_ERROR "outputs differ between 1 and 2 threads (${WORK_DIR}/threads*.txt)")
endif()
message("all ${count} outputs bitwise equal on 1 and 2 threads")
