from btxrd_cam.cli import main

main()
